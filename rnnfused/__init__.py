"""rnnfused: torch.nn's RNN, LSTM, GRU and their cells on fused CPU and CUDA kernels.

>>> import rnnfused
>>> lstm = rnnfused.LSTM(256, 512, num_layers=2, batch_first=True)  # as nn.LSTM
>>> model = rnnfused.convert(model)  # swap every nn recurrent module inside a model
"""

from rnnfused.functional import backend_info, empty_cache, reference_mode
from rnnfused.modules import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell, convert

__all__ = [
    "RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "convert", "backend_info",
    "empty_cache", "reference_mode",
]
__version__ = "0.1.0"

"""A short training run: torch.nn model and its rnnfused conversion follow the same loss curve;
rnnfused.convert swaps every recurrent module in place and keeps the Parameter objects."""

import copy

import pytest
import torch

import rnnfused
from helpers import OpNames

VOCAB, EMBED, HIDDEN, CLASSES = 50, 16, 32, 5
STEPS = 20
TORCH_CLASSES = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}


class Tagger(torch.nn.Module):
    """Embedding(50, 16) -> 2-layer recurrent module, hidden 32 -> Linear -> per-step logits."""

    def __init__(self, kind: str):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, EMBED)
        self.rnn = TORCH_CLASSES[kind](EMBED, HIDDEN, num_layers=2, batch_first=True)
        self.head = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, tokens):
        out, _ = self.rnn(self.embed(tokens))
        return self.head(out)


def train(model, tokens, targets, device):
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    loss_fn = torch.nn.CrossEntropyLoss()
    losses = []
    for _ in range(STEPS):
        opt.zero_grad()
        logits = model(tokens)
        loss = loss_fn(logits.reshape(-1, CLASSES), targets.reshape(-1))
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return torch.tensor(losses, dtype=torch.float64)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_training_loss_curve_matches(kind, device):
    ref_model = Tagger(kind)
    fused_model = rnnfused.convert(copy.deepcopy(ref_model))
    assert isinstance(fused_model.rnn, (rnnfused.LSTM, rnnfused.GRU, rnnfused.RNN))
    tokens = torch.randint(0, VOCAB, (4, 6), device=device)
    targets = torch.randint(0, CLASSES, (4, 6), device=device)
    ref_losses = train(ref_model, tokens, targets, device)
    fused_losses = train(fused_model, tokens, targets, device)
    # the model learns: otherwise matching curves would prove little
    assert ref_losses[-1] < 0.5 * ref_losses[0]
    # float32 end to end: the project's stated tolerance, at every step
    torch.testing.assert_close(fused_losses, ref_losses, atol=1e-5, rtol=1e-4)
    # and the trained weights agree too (on CUDA, where cuDNN sums the gradients in
    # another order, Adam's normalised steps turn that into up to ~2e-4 on a weight
    # whose gradient is near zero: seen on an H200)
    atol = 1e-4 if device == "cpu" else 1e-3
    for (name, p_ref), (_, p_fused) in zip(ref_model.named_parameters(),
                                          fused_model.named_parameters(), strict=True):
        torch.testing.assert_close(p_fused, p_ref, atol=atol, rtol=1e-3,
                                   msg=lambda m, name=name: f"{name}: {m}")


class Nested(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lstm = torch.nn.LSTM(3, 4, num_layers=2, bidirectional=True)
        self.blocks = torch.nn.ModuleList([
            torch.nn.Sequential(torch.nn.Linear(8, 3), torch.nn.GRU(3, 4)),
            torch.nn.RNN(3, 4, nonlinearity="relu", bias=False),
        ])
        self.cells = torch.nn.ModuleDict({
            "lstm": torch.nn.LSTMCell(3, 4),
            "gru": torch.nn.GRUCell(3, 4),
            "rnn": torch.nn.RNNCell(3, 4),
        })
        self.proj = torch.nn.LSTM(3, 4, proj_size=2)


def test_convert_replaces_every_recurrent_module_in_place():
    model = Nested()
    params_before = {n: p for n, p in model.named_parameters()}
    names_before = [n for n, _ in model.named_modules()]
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    converted = rnnfused.convert(model)
    assert converted is model
    expected_types = {
        "lstm": rnnfused.LSTM, "blocks.0.1": rnnfused.GRU, "blocks.1": rnnfused.RNN,
        "cells.lstm": rnnfused.LSTMCell, "cells.gru": rnnfused.GRUCell,
        "cells.rnn": rnnfused.RNNCell, "proj": rnnfused.LSTM,
    }
    modules = dict(model.named_modules())
    assert list(modules) == names_before
    for name, cls in expected_types.items():
        assert type(modules[name]) is cls, name
    assert type(modules["blocks.0.0"]) is torch.nn.Linear
    # same Parameter objects, same values, same configuration
    for n, p in model.named_parameters():
        assert p is params_before[n], n
    assert list(model.state_dict()) == list(state_before)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state_before[k]), k
    assert modules["blocks.1"].nonlinearity == "relu" and modules["blocks.1"].bias is False
    assert modules["lstm"].bidirectional and modules["lstm"].num_layers == 2
    assert modules["proj"].proj_size == 2


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_convert_outputs_match(kind):
    ref_model = Tagger(kind)
    fused_model = rnnfused.convert(copy.deepcopy(ref_model))
    tokens = torch.randint(0, VOCAB, (3, 7))
    torch.testing.assert_close(fused_model(tokens), ref_model(tokens), atol=1e-5, rtol=1e-4)


def test_convert_top_level_module():
    """convert() on a bare torch.nn.LSTM returns an rnnfused.LSTM with the same parameters."""
    lstm = torch.nn.LSTM(3, 4, num_layers=2)
    params = list(lstm.parameters())
    converted = rnnfused.convert(lstm)
    assert isinstance(converted, rnnfused.LSTM)
    assert all(a is b for a, b in zip(converted.parameters(), params, strict=True))


def test_convert_leaves_rnnfused_and_others_alone():
    model = torch.nn.Sequential(rnnfused.GRU(3, 4), torch.nn.Linear(4, 2))
    gru = model[0]
    rnnfused.convert(model)
    assert model[0] is gru
    assert type(model[1]) is torch.nn.Linear


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_truncated_bptt_detaching_the_state_in_place(kind, packed):
    """Language-model training carries the final state into the next chunk and cuts
    the graph with h.detach_(): the final states must not be views (one layer, one
    direction is where a view of the op's output could be returned)."""
    cls = TORCH_CLASSES[kind]
    ref = cls(EMBED, HIDDEN)
    fused = rnnfused.convert(copy.deepcopy(ref))
    chunks = torch.randn(4, 5, 3, EMBED)  # 4 chunks of [T=5, B=3, EMBED]
    lengths = torch.tensor([5, 3, 4])

    def run(model):
        opt = torch.optim.SGD(model.parameters(), lr=0.5)
        state, losses = None, []
        for chunk in chunks:
            x = (torch.nn.utils.rnn.pack_padded_sequence(chunk, lengths, enforce_sorted=False)
                 if packed else chunk)
            out, state = model(x, state)
            out = out.data if packed else out
            loss = out.pow(2).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            for s in state if isinstance(state, tuple) else (state,):
                s.detach_()
            losses.append(loss.item())
        return torch.tensor(losses, dtype=torch.float64)

    # float32: the project's tolerance at every step
    torch.testing.assert_close(run(fused), run(ref), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("grad", [False, True], ids=["no_grad", "grad"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_final_states_share_no_memory_with_the_output(kind, grad, packed):
    """A one-layer, one-direction stack returns its op's final states reshaped to
    [1, B, *] without a copy (_C.*_stack): they must still be tensors of their own,
    as torch.nn's are, not views, and not sharing memory with the output or each
    other: zeroing them in place leaves the output as it was."""
    module = rnnfused.convert(TORCH_CLASSES[kind](EMBED, HIDDEN))
    x = torch.randn(5, 3, EMBED, requires_grad=grad)
    if packed:
        x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 4, 2]))
    with torch.set_grad_enabled(grad):
        out, hidden = module(x)
    out = out.data if packed else out
    states = hidden if isinstance(hidden, tuple) else (hidden,)
    before = out.detach().clone()
    for state in states:
        assert state.shape[0] == 1 and not state._is_view()
        state.detach().zero_()
    torch.testing.assert_close(out.detach(), before, rtol=0, atol=0)
    storages = {t.untyped_storage().data_ptr() for t in (out, *states)}
    assert len(storages) == 1 + len(states)


def _modified(tensor, how, in_place):
    """The change a program makes to an output: in place, or its out-of-place equal."""
    if how == "add_":  # a residual connection written `out += x`
        return tensor.add_(1.0) if in_place else tensor + 1.0
    if how == "relu_":
        return torch.relu_(tensor) if in_place else torch.relu(tensor)
    if how == "dropout":
        return torch.nn.functional.dropout(tensor, 0.5, training=True, inplace=in_place)
    return tensor.detach_() if in_place else tensor.detach()


def _gradients(module, x, how, target, in_place):
    """x.grad and every parameter's grad of a forward whose output or final state is
    changed (in place or not) before the loss."""
    torch.manual_seed(0)  # in-place dropout's mask
    x = x.clone().requires_grad_()
    out, hidden = module(x)
    h_n = hidden[0] if isinstance(hidden, tuple) else hidden
    if target == "output":
        out = _modified(out, how, in_place)
    else:
        h_n = _modified(h_n, how, in_place)
    (out.pow(2).sum() + h_n.pow(2).sum()).backward()
    return [x.grad, *(p.grad for p in module.parameters())]


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("layers,bidirectional", [(1, False), (2, False), (1, True)], ids=["1", "2", "bidir"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("how,target", [("add_", "output"), ("relu_", "output"), ("dropout", "output"),
                                        ("detach_", "output"), ("add_", "h_n")])
def test_outputs_modified_in_place(kind, layers, bidirectional, batch_first, how, target):
    """Programs change a recurrent module's output in place (`out += x`, relu_, in-place
    dropout, out.detach_()) and then call backward. torch.nn allows it where ATen
    concatenates the steps' states into a tensor of its own (GRU and RNN; LSTM in
    float64, with proj_size or packed input), not where oneDNN's LSTM saved the
    output it returns. rnnfused's output is always a tensor of its own (never a view,
    not what the op saved): the change works, with the gradients of the same change
    made out of place under torch.nn."""
    cls = TORCH_CLASSES[kind]
    ref = cls(EMBED, HIDDEN, layers, bidirectional=bidirectional, batch_first=batch_first)
    fused = rnnfused.convert(copy.deepcopy(ref))
    x = torch.randn(5, 3, EMBED)
    got = _gradients(fused, x, how, target, in_place=True)
    want = _gradients(ref, x, how, target, in_place=False)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("packed", [False, True], ids=["dense", "packed"])
def test_layer_op_output_is_the_callers_to_change(kind, packed):
    """A layer op's backward keeps a copy of the output it returns: the caller may
    change the output in place (the modules return it as it is), and the gradients are
    those of the same change made out of place."""
    from rnnfused import ops

    torch.manual_seed(0)
    T, B, I, H = 6, 3, 5, 7
    module = TORCH_CLASSES[kind](I, H)
    x = torch.randn(T, B, I)
    batch_sizes = torch.tensor([3, 3, 2, 2, 1, 1]) if packed else None
    rows = x.flatten(0, 1)[: int(batch_sizes.sum())] if packed else x
    h0 = torch.randn(B, H)

    def gradients(in_place):
        leaf = rows.clone().requires_grad_()
        w_ih, w_hh, b_ih, b_hh = (p.detach().clone().requires_grad_() for p in module.parameters())
        if kind == "lstm":
            output, h_n, _ = ops.lstm_layer(leaf, batch_sizes, h0, h0, w_ih, w_hh, b_ih, b_hh, None, False)
        elif kind == "gru":
            output, h_n = ops.gru_layer(leaf, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, False)
        else:
            output, h_n = ops.rnn_layer(leaf, batch_sizes, h0, w_ih, w_hh, b_ih, b_hh, False, False)
        changed = output.mul_(3.0).add_(1.0) if in_place else output * 3.0 + 1.0
        (changed.pow(2).sum() + h_n.sum()).backward()
        return [leaf.grad, w_ih.grad, w_hh.grad, b_ih.grad, b_hh.grad]

    for got, want in zip(gradients(True), gradients(False), strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("options", [dict(dtype=torch.float64), dict(proj_size=4), dict(packed=True)],
                         ids=["float64", "proj_size", "packed"])
def test_lstm_output_modified_in_place_where_torch_nn_allows_it(options):
    """The LSTMs torch.nn runs on ATen's own loop (not oneDNN's) allow `out += 1`
    before backward; rnnfused's do too, with the same gradients."""
    options = dict(options)
    dtype, packed = options.pop("dtype", torch.float32), options.pop("packed", False)
    ref = torch.nn.LSTM(EMBED, HIDDEN, **options).to(dtype)
    fused = rnnfused.convert(copy.deepcopy(ref))
    x = torch.randn(5, 3, EMBED, dtype=dtype)
    grads = []
    for module in (ref, fused):
        leaf = x.clone().requires_grad_()
        inp = torch.nn.utils.rnn.pack_padded_sequence(leaf, torch.tensor([5, 4, 2])) if packed else leaf
        out, (h_n, _) = module(inp)
        (out.data if packed else out).add_(1.0)
        ((out.data if packed else out).pow(2).sum() + h_n.sum()).backward()
        grads.append([leaf.grad, *(p.grad for p in module.parameters())])
    for g, w in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


class LanguageModel(torch.nn.Module):
    """Embedding -> 2-layer LSTM -> Linear, plus a GRUCell, built from whatever torch.nn
    holds when it is constructed (a program that had rnnfused swapped in)."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, EMBED)
        self.rnn = torch.nn.LSTM(EMBED, HIDDEN, num_layers=2)
        self.cell = torch.nn.GRUCell(HIDDEN, HIDDEN)
        self.head = torch.nn.Linear(HIDDEN, VOCAB)

    def forward(self, tokens):
        out, _ = self.rnn(self.embed(tokens))
        return self.head(self.cell(out[-1]))


@pytest.mark.parametrize("spec", ["default", "set"])
def test_dynamic_quantization_of_a_swapped_in_program(spec, monkeypatch):
    """quantize_dynamic in a program that swapped rnnfused in for torch.nn's classes:
    its recurrent modules become torch's dynamically quantized ones, as torch.nn's do,
    with the same outputs."""
    torch_model = LanguageModel().eval()
    for name in ("LSTM", "GRUCell"):
        monkeypatch.setattr(torch.nn, name, getattr(rnnfused, name))
    fused_model = LanguageModel().eval()
    assert isinstance(fused_model.rnn, rnnfused.LSTM) and isinstance(fused_model.cell, rnnfused.GRUCell)
    fused_model.load_state_dict(torch_model.state_dict())

    def quantize(model, lstm_cls, cell_cls):
        qconfig_spec = None if spec == "default" else {lstm_cls, cell_cls, torch.nn.Linear}
        return torch.ao.quantization.quantize_dynamic(model, qconfig_spec, dtype=torch.qint8)

    quantized_fused = quantize(fused_model, rnnfused.LSTM, rnnfused.GRUCell)  # as torch.nn now names them
    monkeypatch.undo()
    quantized_torch = quantize(torch_model, torch.nn.LSTM, torch.nn.GRUCell)
    dynamic = torch.ao.nn.quantized.dynamic
    assert type(quantized_fused.rnn) is dynamic.LSTM and type(quantized_fused.cell) is dynamic.GRUCell
    assert type(quantized_torch.rnn) is dynamic.LSTM
    tokens = torch.randint(0, VOCAB, (6, 3))
    # the same quantized weights through the same quantized kernels
    torch.testing.assert_close(quantized_fused(tokens), quantized_torch(tokens), atol=0, rtol=0)


def test_dynamic_quantization_of_a_converted_model():
    """A model turned by convert(): a qconfig naming rnnfused's classes quantizes its
    recurrent modules as torch.nn's; the default qconfig (torch.nn's classes, exact
    types) leaves them in float, as the README says."""
    torch_model = LanguageModel().eval()
    fused_model = rnnfused.convert(copy.deepcopy(torch_model))
    dynamic = torch.ao.nn.quantized.dynamic
    quantize = torch.ao.quantization.quantize_dynamic
    quantized_fused = quantize(fused_model, {rnnfused.LSTM, rnnfused.GRUCell, torch.nn.Linear}, dtype=torch.qint8)
    quantized_torch = quantize(torch_model, None, dtype=torch.qint8)
    assert type(quantized_fused.rnn) is dynamic.LSTM and type(quantized_fused.cell) is dynamic.GRUCell
    tokens = torch.randint(0, VOCAB, (6, 3))
    torch.testing.assert_close(quantized_fused(tokens), quantized_torch(tokens), atol=0, rtol=0)
    assert type(quantize(fused_model, None, dtype=torch.qint8).rnn) is rnnfused.LSTM


class WeightDrop(torch.nn.Module):
    """AWD-LSTM's WeightDrop, as programs port it: the recurrent weight's Parameter is
    replaced by `<name>_raw`, and each forward sets the module's `<name>` to a plain
    tensor, a dropout of it (torch.nn's __setattr__ puts it into the flat weights)."""

    def __init__(self, module, names, p=0.5):
        super().__init__()
        self.module, self.names, self.p = module, names, p
        for name in names:
            weight = getattr(module, name)
            del module._parameters[name]
            module.register_parameter(name + "_raw", torch.nn.Parameter(weight.data))

    def forward(self, *args):
        for name in self.names:
            raw = getattr(self.module, name + "_raw")
            setattr(self.module, name, torch.nn.functional.dropout(raw, self.p, self.training))
        return self.module(*args)


def _hooked(kind, how):
    """A torch.nn module whose recurrent weight a hook-based utility computes."""
    import torch.nn.utils.prune as prune

    module = TORCH_CLASSES[kind](EMBED, HIDDEN, 2)
    if how == "prune":
        prune.l1_unstructured(module, "weight_hh_l0", amount=0.4)
        prune.random_unstructured(module, "weight_ih_l1", amount=0.3)
    elif how == "weight_norm":  # the deprecated forward-pre-hook version
        torch.nn.utils.weight_norm(module, "weight_hh_l1")
    elif how == "spectral_norm":  # the same, with a power iteration per forward
        torch.nn.utils.spectral_norm(module, "weight_hh_l0")
    else:
        module = WeightDrop(module, ["weight_hh_l0", "weight_hh_l1"], 0.4)
    return module


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("how", ["prune", "weight_norm", "spectral_norm", "weight_drop"])
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_weights_computed_by_hooks(kind, how):
    """torch.nn.utils.prune, the hook-based weight_norm and spectral_norm, and
    AWD-LSTM's WeightDrop set a recurrent weight to a computed tensor before each
    forward: three training steps (dropout masks from the same seeds) and an eval
    forward give torch.nn's outputs and gradients."""
    models = []
    for _ in range(2):  # built twice from one seed (their computed weights can't deepcopy)
        torch.manual_seed(0)
        models.append(_hooked(kind, how))
    ref, fused = models[0], rnnfused.convert(models[1])
    x = torch.randn(5, 3, EMBED)
    results = []
    for model in (ref, fused):
        got = []
        for step in range(3):
            torch.manual_seed(step)
            out, _ = model(x)
            model.zero_grad()
            out.pow(2).sum().backward()
            got += [out.detach()] + [p.grad.clone() for p in model.parameters()]
        model.eval()
        got.append(model(x)[0].detach())
        results.append(got)
    assert len(results[1]) == len(results[0])
    for g, w in zip(*results):
        torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)
    with OpNames() as ops:  # and the fused kernels ran, not torch.nn's forward
        fused(x)
    assert f"{kind}_layer" in ops.names, ops.names

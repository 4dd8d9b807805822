"""Builds rnnfused._C: the C++ (CPU) kernels always, the CUDA kernels when a CUDA
toolkit and a CUDA build of torch are present.

RNNFUSED_CUDA=1 forces the CUDA build (CI compiles it without a GPU; give
TORCH_CUDA_ARCH_LIST), RNNFUSED_CUDA=0 skips it.
"""

import glob
import os
import platform

from setuptools import find_packages, setup
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    forced = os.environ.get("RNNFUSED_CUDA")
    if forced is not None:
        return forced == "1"
    import torch

    return cpp_extension.CUDA_HOME is not None and torch.version.cuda is not None


def _extension():
    cpp_sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    if platform.machine().lower() not in ("x86_64", "amd64"):
        # The AVX2 / AVX-512 kernels are x86 only; the generic loop runs elsewhere.
        cpp_sources = [s for s in cpp_sources if "avx" not in os.path.basename(s)]
    cxx_flags = ["-O3", "-fopenmp", "-Wall", "-Wno-unused-function"]
    link_flags = ["-fopenmp"]
    if platform.system() == "Linux":
        # The shared libstdc++ that torch uses, by file name and before the compiler
        # driver's own libraries: a toolchain that links libstdc++ statically
        # (-static-libstdc++, or only libstdc++.a on its search path, as the g++ in
        # /opt/gcc of one GPU image) otherwise puts a second copy into _C, whose
        # streams mix locale state with torch's copy: an error message with sizes in
        # it came out cut short ("got [") or crashed the process.
        link_flags.append("-l:libstdc++.so.6")
    if _want_cuda():
        cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
        return cpp_extension.CUDAExtension(
            "rnnfused._C",
            cpp_sources + cuda_sources,
            extra_compile_args={
                "cxx": cxx_flags + ["-DRNNFUSED_WITH_CUDA"],
                "nvcc": ["-O3", "-DRNNFUSED_WITH_CUDA", "--expt-relaxed-constexpr"],
            },
            extra_link_args=link_flags,
        )
    return cpp_extension.CppExtension(
        "rnnfused._C", cpp_sources, extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags
    )


setup(
    name="rnnfused",
    version="0.1.0",
    description="Fused CPU and CUDA kernels for torch.nn's RNN, LSTM and GRU, as drop-in modules",
    packages=find_packages(include=["rnnfused", "rnnfused.*"]),
    ext_modules=[_extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension},
    python_requires=">=3.9",
    install_requires=["torch>=2.4"],
)

"""Builds rnnfused._C: the C++ (CPU) kernels always, the CUDA kernels when a CUDA
toolkit and a CUDA build of torch are present.

RNNFUSED_CUDA=1 forces the CUDA build (CI compiles it without a GPU; give
TORCH_CUDA_ARCH_LIST), RNNFUSED_CUDA=0 skips it.
"""

import glob
import importlib.util
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


# The headers that ATen/cuda/CUDAContext.h (cuBLAS's handle) includes.
_CUDA_MATH_HEADERS = ("cublas_v2.h", "cublasLt.h", "cusparse.h", "cusolverDn.h")


def _cublas_build_flags():
    """Include folders and link arguments for calling cuBLAS directly: the CUDA
    toolkit's headers and libcublas, else those of the nvidia wheels that torch's
    CUDA build loads its libcublas from (a toolkit without the math libraries, as
    on the CI image). None where either part is missing: the products then go
    through ATen only."""
    toolkit = cpp_extension.CUDA_HOME
    toolkit_include = os.path.join(toolkit, "include") if toolkit else None
    folders = [toolkit_include] if toolkit else []
    libraries = [os.path.join(toolkit, d, "libcublas.so") for d in ("lib64", "lib")] if toolkit else []
    spec = importlib.util.find_spec("nvidia")
    for base in spec.submodule_search_locations if spec else []:
        # nvidia/cu13/{include,lib} (CUDA 13), nvidia/cublas/{include,lib} ... (CUDA 12)
        folders += sorted(glob.glob(os.path.join(base, "*", "include")))
        libraries += sorted(glob.glob(os.path.join(base, "*", "lib", "libcublas.so*")))
    includes = []
    for header in _CUDA_MATH_HEADERS:
        found = [f for f in folders if os.path.exists(os.path.join(f, header))]
        if not found:
            return None
        includes += [found[0]] if found[0] not in includes else []
    library = next((lib for lib in libraries if os.path.exists(lib)), None)
    if library is None:
        return None
    # A full path links the file's soname (libcublas.so.13): torch has it loaded.
    # The toolkit's include folder is on nvcc's path already.
    return [f for f in includes if f != toolkit_include], [library]


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
        cuda_defines = ["-DRNNFUSED_WITH_CUDA"]
        # cuBLAS called directly for the time loops' products (launch_cuda.cuh).
        # The wheels' folders after the toolkit's (-isystem: searched after every -I),
        # so that its CUDA runtime headers stay the ones nvcc came with.
        cublas = _cublas_build_flags()
        cublas_nvcc, cublas_link = [], []
        if cublas:
            cublas_nvcc = ["-DRNNFUSED_CUBLAS_DIRECT"] + [f"-isystem={d}" for d in cublas[0]]
            cublas_link = cublas[1]
        return cpp_extension.CUDAExtension(
            "rnnfused._C",
            cpp_sources + cuda_sources,
            extra_compile_args={
                "cxx": cxx_flags + cuda_defines,
                "nvcc": ["-O3", "--expt-relaxed-constexpr"] + cuda_defines + cublas_nvcc,
            },
            extra_link_args=link_flags + cublas_link,
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

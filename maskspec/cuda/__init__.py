"""CUDA builds: the fixed Triton kernels (``kernels``), the row-program → Triton generator
(``generator``), launch plans and caches per configuration (``plans``), and which path a
build takes (``dispatch``). Below the targets and the public face; above ``blocks``, whose
results the kernels reproduce tensor for tensor."""

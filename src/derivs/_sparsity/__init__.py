"""Sparse Jacobians and Hessians: detection, coloring, decompression.

``_algebra`` (index sets as sparse boolean matrices) and ``_coloring`` /
``_kernels`` (NumPy/Numba) are framework-free; ``_jax_detect`` and
``_torch_detect`` interpret each framework's graph with that algebra.
"""

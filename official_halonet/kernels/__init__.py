"""Kernels: hand-written TPU kernels (Pallas) for what XLA cannot fuse, and TensorFlow's access.

halo_attention.py and export.py are JAX code, run in a CPU-only JAX process of their own and never
imported by TensorFlow code; library.py (standard library only) runs export.py and hands TensorFlow
the serialized modules (layers/fused_attention.py calls them); tpu_software.py holds the pinned
versions of JAX and libtpu (one compiler everywhere) and how libtpu starts without a TPU.
"""

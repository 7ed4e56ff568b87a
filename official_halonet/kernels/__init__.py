"""Kernels: hand-written TPU kernels (Pallas) for what XLA cannot fuse, and TensorFlow's access.

halo_attention.py and export.py are JAX code for the side environment (requirements-tpu.txt) and are
never imported by TensorFlow code; library.py (standard library only) runs export.py there and
hands TensorFlow the serialized modules (layers/fused_attention.py calls them).
"""

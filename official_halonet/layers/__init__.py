"""Layers: the local self-attention primitives (halo and SASA attention) and their helpers."""
from official_halonet.layers.halo_attention import HaloAttention
from official_halonet.layers.sasa_attention import SASAAttention
from official_halonet.layers.spatially_aware_attention import SpatiallyAwareAttention

__all__ = ["HaloAttention", "SASAAttention", "SpatiallyAwareAttention"]

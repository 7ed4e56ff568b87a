"""Models: the HaloNet / SASA / hybrid backbones, their named specs and the builders.

    import official_halonet.models as models
    model = models.build('h3', num_classes=1000)
    backbone = models.HaloNet(models.HaloNetConfig(model_id='h4', block_size=12))
"""
from official_halonet.models.config import HaloNetConfig
from official_halonet.models.factory import Backbone, build, build_halonet
from official_halonet.models.halonet import HaloNet
from official_halonet.models.overrides import OverrideError
from official_halonet.models.specs import MODELS, ModelSpec, get_spec
from official_halonet.models.timm_weights import TimmWeightsError, from_timm

__all__ = ["Backbone", "HaloNet", "HaloNetConfig", "MODELS", "ModelSpec", "build",
           "build_halonet", "from_timm", "get_spec", "OverrideError", "TimmWeightsError"]

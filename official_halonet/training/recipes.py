"""The published classification recipes: each one set of `experiment.Settings` fields, by name.

    RECIPES['halonet_h1_imagenet'] -> {'model_id': 'h1', 'epochs': 350, ...}

Each recipe is defined here once and read by both surfaces: experiment.py registers every name
with Model Garden's experiment factory (`--experiment=halonet_h1_imagenet` with
`--config_file` / `--params_override`, official_halonet/train.py), and each gin file in gin/ binds
`experiment.recipe = '<name>'` plus whatever it overrides. Values a recipe leaves out are
Settings' defaults, which are the paper's ImageNet recipe; a recipe never restates them. The data paths are placeholders (gs://YOUR-BUCKET/...) to override.
"""
from typing import Any, Dict

Recipe = Dict[str, Any]

# The HaloNet paper's ImageNet recipe (section 4) is `Settings`' defaults (experiment.py: batch
# 4096, 350 epochs, lr 0.1 per 256 examples, 10 warm-up epochs, cosine to lr/128, Nesterov 0.9,
# weight decay 2e-5, label smoothing 0.1, the ImageNet example counts and labels 1..1000); the
# H models' SiLU is their spec's activation. A recipe states only what differs from them.
IMAGENET: Recipe = dict(
    train_input_path="gs://YOUR-BUCKET/imagenet/train-*",
    eval_input_path="gs://YOUR-BUCKET/imagenet/validation-*")

# The HaloNet-50 / ResNet-50 component ablation: 150 epochs at 256 px, components off.
ABLATION: Recipe = dict(IMAGENET, image_size=256, epochs=150, activation="relu",
                        label_smoothing=0.0, randaug_magnitude=0, weight_decay=8e-5)
# The ablation recipe with its components on (the detection backbones' ImageNet pretraining).
ABLATION_COMPONENTS_ON: Recipe = dict(ABLATION, label_smoothing=0.1, randaug_magnitude=10,
                                      weight_decay=4e-5)

# SASA (Ramachandran et al. 2019): 130 epochs at 224 px, cosine to 0.
SASA: Recipe = dict(IMAGENET, image_size=224, epochs=130, final_learning_rate_fraction=0.0,
                    weight_decay=1e-4, activation="relu", randaug_magnitude=0)

# ImageNet-21k pretraining of H4 (b=8, h=2 at 256 px). RandAugment magnitude 10 and, from the
# defaults, label smoothing 0.1 and the final learning-rate fraction 1/128 are this project's
# choices (the paper gives none).
I21K_PRETRAIN: Recipe = dict(
    model_id="h4_i21k", image_size=256,
    train_input_path="gs://YOUR-BUCKET/imagenet21k/train-*",
    eval_input_path="gs://YOUR-BUCKET/imagenet21k/validation-*",
    num_classes=21843, label_offset=0, train_examples=14197122, eval_examples=102400,
    epochs=90, base_learning_rate=0.16, warmup_epochs=2, weight_decay=8e-5,
    randaug_magnitude=10)

# Fine-tuning on ImageNet from the pretraining: 8 epochs, batch 512, lr 0.008 × 512 / 256 =
# 0.016, no EMA (the default); RandAugment 10 and, from the defaults, label smoothing 0.1, weight
# decay 2e-5, Nesterov momentum 0.9 and the final fraction 1/128 are this project's choices.
I21K_FINETUNE: Recipe = dict(
    IMAGENET, model_id="h4_i21k", init_checkpoint="gs://YOUR-BUCKET/h4_i21k_pretrain",
    init_checkpoint_modules="backbone", epochs=8, global_batch_size=512,
    base_learning_rate=0.008, warmup_epochs=0.5, randaug_magnitude=10)

# Stochastic depth and dropout of H0-H7 are this project's choices (the paper uses both "for
# larger models" without values).
_H_REGULARISATION = {"h0": (0.0, 0.2), "h1": (0.0, 0.2), "h2": (0.0, 0.2), "h3": (0.1, 0.2),
                     "h4": (0.1, 0.3), "h5": (0.2, 0.3), "h6": (0.2, 0.4), "h7": (0.2, 0.5)}


def _h_recipes() -> Dict[str, Recipe]:
  recipes = {f"halonet_{model}_imagenet": dict(IMAGENET, model_id=model,
                                               stochastic_depth_drop_rate=rates[0],
                                               dropout_rate=rates[1])
             for model, rates in _H_REGULARISATION.items()}
  for hybrid in ("h7_c1", "h7_c12", "h7_c123"):  # H7's recipe, conv stages
    recipes[f"halonet_{hybrid}_imagenet"] = dict(recipes["halonet_h7_imagenet"], model_id=hybrid)
  return recipes


RECIPES: Dict[str, Recipe] = {
    **_h_recipes(),
    "halonet50_imagenet": dict(ABLATION, model_id="halonet50"),
    "resnet50_imagenet": dict(ABLATION, model_id="resnet50"),
    **{f"{model}_imagenet": dict(ABLATION_COMPONENTS_ON, model_id=model)
       for model in ("resnet50_se_halo_b8", "resnet50_se_halo_b32", "resnet101_se_halo_b8")},
    **{f"sasa_resnet{depth}_imagenet": dict(SASA, model_id=f"sasa_resnet{depth}")
       for depth in (26, 38, 50)},
    "h4_i21k_pretrain": I21K_PRETRAIN,
    "h4_i21k_finetune_384": dict(I21K_FINETUNE, image_size=384, block_size=12, halo_size=2),
    "h4_i21k_finetune_512": dict(I21K_FINETUNE, image_size=512, block_size=16, halo_size=1),
}

# Detection (training/detection.py's DetectionSettings; their defaults are the HaloNet paper's
# COCO recipe: 67,500 steps, batch 64, 1024 px, lr 0.1 with 0.1× decays at 60k and 65k).
DETECTION_RECIPES: Dict[str, Recipe] = {
    "maskrcnn_r50_halo_b8_coco": dict(kind="maskrcnn", backbone="resnet50_se_halo_b8"),
    "maskrcnn_r50_halo_b32_coco": dict(kind="maskrcnn", backbone="resnet50_se_halo_b32"),
    "maskrcnn_r101_halo_b8_coco": dict(kind="maskrcnn", backbone="resnet101_se_halo_b8"),
    "retinanet_r50_halo_b8_coco": dict(kind="retinanet", backbone="resnet50_se_halo_b8"),
    "retinanet_sasa_r50_coco": dict(kind="retinanet", backbone="sasa_resnet50"),
    "retinanet_sasa_r50_attention_stem_coco": dict(kind="retinanet",
                                                   backbone="sasa_resnet50_attention_stem"),
    # timm's ImageNet-trained halonet26t as the backbone, from official_halonet.convert_timm.
    "maskrcnn_halonet26t_coco": dict(kind="maskrcnn", backbone="halonet26t",
                                     init_checkpoint="/models/halonet26t/checkpoint"),
    "retinanet_halonet26t_coco": dict(kind="retinanet", backbone="halonet26t",
                                      init_checkpoint="/models/halonet26t/checkpoint"),
}

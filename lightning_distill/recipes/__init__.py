"""Recipes: one module per paper, each a :class:`~lightning_distill.DistillationModule` subclass.

``RECIPES`` is a plain table from slug to the recipe class path and the paper title; it is what
``lightning-distill list`` prints. Recipes are imported lazily, so importing this package is cheap.
"""

from __future__ import annotations

import importlib
from typing import NamedTuple

__all__ = ["RECIPES", "RecipeInfo", "load_recipe"]


class RecipeInfo(NamedTuple):
    family: str
    class_path: str
    title: str
    arxiv: str
    config: str = "config.yaml"  # the config `--recipe <slug>` runs, in recipes/<slug>/


RECIPES: dict[str, RecipeInfo] = {
    "kd": RecipeInfo(
        "baseline",
        "lightning_distill.recipes.kd.KnowledgeDistillation",
        "Distilling the Knowledge in a Neural Network (with FitNets / AT / CWD feature terms)",
        "1503.02531",
    ),
    "meal_v2": RecipeInfo(
        "classification",
        "lightning_distill.recipes.meal_v2.MEALV2",
        "MEAL V2: Boosting Vanilla ResNet-50 to 80%+ Top-1 Accuracy on ImageNet without Tricks",
        "2009.08453",
    ),
    "beyond_ssl": RecipeInfo(
        "representation",
        "lightning_distill.recipes.beyond_ssl.BeyondSSL",
        "Beyond Self-Supervision: A Simple Yet Effective Network Distillation Alternative to Improve Backbones",
        "2103.05959",
    ),
    "dmd2": RecipeInfo(
        "diffusion",
        "lightning_distill.recipes.dmd2.DMD2",
        "Improved Distribution Matching Distillation for Fast Image Synthesis",
        "2405.14867",
    ),
    "swiftbrush": RecipeInfo(
        "diffusion",
        "lightning_distill.recipes.swiftbrush.SwiftBrush",
        "SwiftBrush: One-Step Text-to-Image Diffusion Model with Variational Score Distillation",
        "2312.05239",
    ),
    "decoupled_dmd": RecipeInfo(
        "diffusion",
        "lightning_distill.recipes.decoupled_dmd.DecoupledDMD",
        "Decoupled DMD: CFG Augmentation as the Spear, Distribution Matching as the Shield",
        "2511.22677",
    ),
    "phased_dmd": RecipeInfo(
        "diffusion",
        "lightning_distill.recipes.phased_dmd.PhasedDMD",
        "Phased DMD: Few-step Distribution Matching Distillation via Score Matching within Subintervals",
        "2510.27684",
    ),
    "flash_dmd": RecipeInfo(
        "diffusion",
        "lightning_distill.recipes.flash_dmd.FlashDMD",
        "Flash-DMD: Towards High-Fidelity Few-Step Image Generation with Efficient Distillation and Joint "
        "Reinforcement Learning",
        "2511.20549",
    ),
    "msd": RecipeInfo(
        "diffusion",
        "lightning_distill.recipes.msd.MSD",
        "Multi-student Diffusion Distillation for Better One-step Generators",
        "2410.23274",
    ),
    "cda": RecipeInfo(
        "dataset",
        "lightning_distill.recipes.cda.CDA",
        "Dataset Distillation via Curriculum Data Synthesis in Large Data Era",
        "2311.18838",
    ),
    "datadam": RecipeInfo(
        "dataset",
        "lightning_distill.recipes.datadam.DataDAM",
        "DataDAM: Efficient Dataset Distillation with Attention Matching",
        "2310.00093",
    ),
    "ftd": RecipeInfo(
        "dataset",
        "lightning_distill.recipes.ftd.FTD",
        "Minimizing the Accumulated Trajectory Error to Improve Dataset Distillation",
        "2211.11004",
    ),
    "hello": RecipeInfo(
        "dataset",
        "lightning_distill.recipes.hello.HeLlO",
        "Heavy Labels Out! Dataset Distillation with Label Space Lightening",
        "2408.08201",
    ),
    "mirage": RecipeInfo(
        "dataset",
        "lightning_distill.recipes.mirage.Mirage",
        "Mirage: Model-Agnostic Graph Distillation for Graph Classification",
        "2310.09486",
    ),
    "slidr": RecipeInfo(
        "lidar",
        "lightning_distill.recipes.slidr.SLidR",
        "Image-to-Lidar Self-Supervised Distillation for Autonomous Driving Data",
        "2203.16258",
    ),
    "lasermix_pp": RecipeInfo(
        "lidar",
        "lightning_distill.recipes.lasermix_pp.LaserMixPP",
        "Multi-Modal Data-Efficient 3D Scene Understanding for Autonomous Driving",
        "2405.05258",
    ),
    "calico": RecipeInfo(
        "lidar",
        "lightning_distill.recipes.calico.CALICOPRC",
        "CALICO: Self-Supervised Camera-LiDAR Contrastive Pre-training for BEV Perception",
        "2306.00349",  # config.yaml is stage 1; stage 2 (CALICORAD) is rad.yaml
    ),
    "lima": RecipeInfo(
        "lidar",
        "lightning_distill.recipes.lima.LiMA",
        "Beyond One Shot, Beyond One Perspective: Cross-View and Long-Horizon Distillation for Better LiDAR Representations",
        "2507.05260",
    ),
    "slam": RecipeInfo(
        "diffusion",
        "lightning_distill.recipes.slam.SLAM",
        "Accelerating Image Generation with Sub-path Linear Approximation Model",
        "2404.13903",
    ),
    "dho": RecipeInfo(
        "classification",
        "lightning_distill.recipes.dho.DHO",
        "Simple yet Effective Semi-supervised Knowledge Distillation from Vision-Language Models via Dual-Head Optimization",
        "2505.07675",
    ),
    "dmae": RecipeInfo(
        "representation",
        "lightning_distill.recipes.dmae.DMAE",
        "Masked Autoencoders Enable Efficient Knowledge Distillers",
        "2208.12256",
    ),
    "dmjd": RecipeInfo(
        "representation",
        "lightning_distill.recipes.dmjd.DMJD",
        "Disjoint Masking with Joint Distillation for Efficient Masked Image Modeling",
        "2301.00230",
    ),
    "hybrid_distill": RecipeInfo(
        "representation",
        "lightning_distill.recipes.hybrid_distill.HybridDistill",
        "Hybrid Distillation: Connecting Masked Autoencoders with Contrastive Learners",
        "2306.15876",
    ),
    "diffusion_features": RecipeInfo(
        "representation",
        "lightning_distill.recipes.diffusion_features.DiffusionFeatures",
        "Distillation of Diffusion Features for Semantic Correspondence",
        "2412.03512",
    ),
    "vlm_ood": RecipeInfo(
        "classification",
        "lightning_distill.recipes.vlm_ood.VLMOOD",
        "Distilling Large Vision-Language Model with Out-of-Distribution Generalizability",
        "2307.03135",
    ),
    "lora_guidance": RecipeInfo(
        "diffusion",
        "lightning_distill.recipes.lora_guidance.LoRAGuidance",
        "LoRA-Enhanced Distillation on Guided Diffusion Models",
        "2312.06899",
    ),
    "label_assist": RecipeInfo(
        "segmentation",
        "lightning_distill.recipes.label_assist.LabelAssist",
        "Make a Strong Teacher with Label Assistance: A Novel Knowledge Distillation Approach for Semantic Segmentation",
        "2407.13254",
    ),
    "distill_fss": RecipeInfo(
        "segmentation",
        "lightning_distill.recipes.distill_fss.DistillFSS",
        "DistillFSS: Synthesizing Few-Shot Knowledge into a Lightweight Segmentation Model",
        "2512.05613",
    ),
    "phg_mae": RecipeInfo(
        "segmentation",
        "lightning_distill.recipes.phg_mae.PHGMAE",
        "Probabilistic Hyper-Graphs using Multiple Randomly Masked Autoencoders for Semi-supervised Multi-modal Multi-task Learning",
        "2510.10068",
    ),
    "vl2v": RecipeInfo(
        "classification",
        "lightning_distill.recipes.vl2v.VL2V",
        "Leveraging Vision-Language Models for Improving Domain Generalization in Image Classification",
        "2310.08255",
    ),
    "boot": RecipeInfo(
        "diffusion",
        "lightning_distill.recipes.boot.BOOT",
        "BOOT: Data-free Distillation of Denoising Diffusion Models with Bootstrapping",
        "2306.05544",
    ),
    "distill_nearest": RecipeInfo(
        "classification",
        "lightning_distill.recipes.distill_nearest.DistillNearest",
        "Distilling from Similar Tasks for Transfer Learning on a Budget",
        "2304.12314",
    ),
    "stable_materials": RecipeInfo(
        "diffusion",
        "lightning_distill.recipes.stable_materials.StableMaterials",
        "StableMaterials: Enhancing Diversity in Material Generation via Semi-Supervised Learning",
        "2406.09293",
    ),
    "imdn": RecipeInfo(
        "super_resolution",
        "lightning_distill.recipes.imdn.IMDNRecipe",
        "Lightweight Image Super-Resolution with Information Multi-distillation Network (+ KD from a larger SR network)",
        "1909.11856",
    ),
    "tad_sr": RecipeInfo(
        "super_resolution",
        "lightning_distill.recipes.tad_sr.TADSR",
        "One Step Diffusion-based Super-Resolution with Time-Aware Distillation (TAD-SR)",
        "2408.07476",
    ),
    "ctmsr": RecipeInfo(
        "super_resolution",
        "lightning_distill.recipes.ctmsr.CTMSR",
        "Consistency Trajectory Matching for One-Step Generative Super-Resolution",
        "2503.20349",
    ),
    "oftsr": RecipeInfo(
        "super_resolution",
        "lightning_distill.recipes.oftsr.OFTSR",
        "OFTSR: One-Step Flow for Image Super-Resolution with Tunable Fidelity-Realism Trade-offs",
        "2412.09465",
    ),
    "pointdistiller": RecipeInfo(
        "detection3d",
        "lightning_distill.recipes.pointdistiller.PointDistiller",
        "PointDistiller: Structured Knowledge Distillation Towards Efficient and Compact 3D Detection",
        "2205.11098",
    ),
    "lise": RecipeInfo(
        "detection3d",
        "lightning_distill.recipes.lise.LiSe",
        "Approaching Outside: Scaling Unsupervised 3D Object Detection from 2D Scene",
        "2407.08569",
    ),
    "xray_distill": RecipeInfo(
        "detection3d",
        "lightning_distill.recipes.xray_distill.XRayDistill",
        "Weak-to-Strong 3D Object Detection with X-Ray Distillation",
        "2404.00679",
    ),
    "monotakd": RecipeInfo(
        "detection3d",
        "lightning_distill.recipes.monotakd.MonoTAKD",
        "MonoTAKD: Teaching Assistant Knowledge Distillation for Monocular 3D Object Detection",
        "2404.04910",
    ),
    "dgr_ct": RecipeInfo(
        "radiance",
        "lightning_distill.recipes.dgr_ct.DGR",
        "Learning to Distill Global Representation for Sparse-View CT (GloReDi)",
        "2308.08463",
    ),
    "pvd": RecipeInfo(
        "radiance",
        "lightning_distill.recipes.pvd.PVD",
        "One is All: Bridging the Gap Between Neural Radiance Fields Architectures with Progressive Volume Distillation (PVD)",
        "2211.15977",
    ),
    "yonos_sr": RecipeInfo(
        "super_resolution",
        "lightning_distill.recipes.yonos_sr.YONOSSR",
        "You Only Need One Step: Fast Super-Resolution with Stable Diffusion via Scale Distillation (YONOS-SR)",
        "2401.17258",
    ),
    "mcm": RecipeInfo(
        "video_diffusion",
        "lightning_distill.recipes.mcm.MCM",
        "Motion Consistency Model: Accelerating Video Diffusion with Disentangled Motion-Appearance Distillation",
        "2406.06890",
    ),
    "vdot": RecipeInfo(
        "video_diffusion",
        "lightning_distill.recipes.vdot.VDOT",
        "VDOT: Efficient Unified Video Creation via Optimal Transport Distillation",
        "2512.06802",
    ),
    "unidistill": RecipeInfo(
        "detection3d",
        "lightning_distill.recipes.unidistill.UniDistill",
        "UniDistill: A Universal Cross-Modality Knowledge Distillation Framework for 3D Object Detection in Bird's-Eye View",
        "2303.15083",
    ),
    "dynamiccity": RecipeInfo(
        "lidar_generation",
        "lightning_distill.recipes.dynamiccity.DynamicCity",
        "DynamicCity: Large-Scale 4D Occupancy Generation from Dynamic Scenes",
        "2410.18084",
    ),
    "distillation_dpo": RecipeInfo(
        "lidar_generation",
        "lightning_distill.recipes.distillation_dpo.DistillationDPO",
        "Diffusion Distillation With Direct Preference Optimization For Efficient 3D LiDAR Scene Completion",
        "2504.11447",
    ),
}


def load_recipe(slug: str) -> type:
    """The recipe class for ``slug``.

    Raises:
        KeyError: an unknown slug; the message lists the closest known slugs.
    """
    if slug not in RECIPES:
        import difflib

        close = difflib.get_close_matches(slug, list(RECIPES), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise KeyError(f"Unknown recipe {slug!r}.{hint} `lightning-distill list` names every recipe.")
    module_name, _, cls_name = RECIPES[slug].class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), cls_name)

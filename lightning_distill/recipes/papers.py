"""The 52 seed papers of lightning_distill, by family: the plan the recipe registry fills in.

``PAPERS`` lists every paper the library is built to cover, whether or not its recipe exists yet;
:data:`lightning_distill.recipes.RECIPES` holds the ones that do. The docs' home page is generated from
both (``tools/mkdocs_hooks.py``), so a recipe added to the registry shows as available there at once.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["FAMILIES", "PAPERS", "Paper"]


class Paper(NamedTuple):
    family: str
    title: str


#: Family slugs in the order the docs list them, with the heading they get.
FAMILIES: dict[str, str] = {
    "classification": "Classification",
    "representation": "Representation learning",
    "segmentation": "Segmentation",
    "diffusion": "Diffusion (image)",
    "video_diffusion": "Video diffusion",
    "super_resolution": "Super-resolution",
    "dataset": "Dataset distillation",
    "lidar": "Image-to-LiDAR",
    "detection3d": "3D detection",
    "lidar_generation": "LiDAR generation",
    "radiance": "Radiance fields and CT",
}

PAPERS: dict[str, Paper] = {
    "dho": Paper(
        "classification",
        "Simple Semi-supervised Knowledge Distillation from Vision-Language Models via Dual-Head Optimization",
    ),
    "distill_nearest": Paper(
        "classification", "Distilling from Similar Tasks for Transfer Learning on a Budget"
    ),
    "meal_v2": Paper(
        "classification",
        "MEAL V2: Boosting Vanilla ResNet-50 to 80%+ Top-1 Accuracy on ImageNet without Tricks",
    ),
    "vl2v": Paper(
        "classification",
        "Distilling from Vision-Language Models for Improved OOD Generalization in Vision Tasks",
    ),
    "vlm_ood": Paper(
        "classification", "Distilling Large Vision-Language Model with Out-of-Distribution Generalizability"
    ),
    "beyond_ssl": Paper(
        "representation",
        "Beyond Self-Supervision: A Simple Yet Effective Network Distillation Alternative to Improve Backbones",
    ),
    "diffusion_features": Paper(
        "representation", "Distillation of Diffusion Features for Semantic Correspondence"
    ),
    "dmae": Paper("representation", "Masked Autoencoders Enable Efficient Knowledge Distillers"),
    "dmjd": Paper(
        "representation", "Disjoint Masking with Joint Distillation for Efficient Masked Image Modeling"
    ),
    "hybrid_distill": Paper(
        "representation", "Hybrid Distillation: Connecting Masked Autoencoders with Contrastive Learners"
    ),
    "distill_fss": Paper(
        "segmentation", "DistillFSS: Synthesizing Few-Shot Knowledge into a Lightweight Segmentation Model"
    ),
    "label_assist": Paper(
        "segmentation",
        "Make a Strong Teacher with Label Assistance: A Novel Knowledge Distillation Approach for Semantic Segmentation",
    ),
    "phg_mae": Paper(
        "segmentation",
        "Probabilistic Hyper-Graphs using Multiple Randomly Masked Autoencoders for Semi-supervised Multi-modal Multi-task Learning",
    ),
    "boot": Paper(
        "diffusion", "BOOT: Data-free Distillation of Denoising Diffusion Models with Bootstrapping"
    ),
    "decoupled_dmd": Paper(
        "diffusion", "Decoupled DMD: CFG Augmentation as the Spear, Distribution Matching as the Shield"
    ),
    "dmd2": Paper("diffusion", "Improved Distribution Matching Distillation for Fast Image Synthesis"),
    "flash_dmd": Paper(
        "diffusion",
        "Flash-DMD: Towards High-Fidelity Few-Step Image Generation with Efficient Distillation and Joint Reinforcement Learning",
    ),
    "lora_guidance": Paper("diffusion", "LoRA-Enhanced Distillation on Guided Diffusion Models"),
    "msd": Paper("diffusion", "Multi-student Diffusion Distillation for Better One-step Generators"),
    "phased_dmd": Paper(
        "diffusion",
        "Phased DMD: Few-step Distribution Matching Distillation via Score Matching within Subintervals",
    ),
    "slam": Paper("diffusion", "Accelerating Image Generation with Sub-path Linear Approximation Model"),
    "stable_materials": Paper(
        "diffusion",
        "StableMaterials: Enhancing Diversity in Material Generation via Semi-Supervised Learning",
    ),
    "swiftbrush": Paper(
        "diffusion", "SwiftBrush: One-Step Text-to-Image Diffusion Model with Variational Score Distillation"
    ),
    "mcm": Paper(
        "video_diffusion",
        "Motion Consistency Model: Accelerating Video Diffusion with Disentangled Motion-Appearance Distillation",
    ),
    "vdot": Paper(
        "video_diffusion", "VDOT: Efficient Unified Video Creation via Optimal Transport Distillation"
    ),
    "ctmsr": Paper(
        "super_resolution", "Consistency Trajectory Matching for One-Step Generative Super-Resolution"
    ),
    "imdn": Paper(
        "super_resolution", "Lightweight Image Super-Resolution with Information Multi-distillation Network"
    ),
    "oftsr": Paper(
        "super_resolution",
        "OFTSR: One-Step Flow for Image Super-Resolution with Tunable Fidelity-Realism Trade-offs",
    ),
    "tad_sr": Paper(
        "super_resolution", "One Step Diffusion-based Super-Resolution with Time-Aware Distillation"
    ),
    "yonos_sr": Paper(
        "super_resolution",
        "You Only Need One Step: Fast Super-Resolution with Stable Diffusion via Scale Distillation",
    ),
    "cda": Paper("dataset", "Dataset Distillation via Curriculum Data Synthesis in Large Data Era"),
    "datadam": Paper("dataset", "DataDAM: Efficient Dataset Distillation with Attention Matching"),
    "ftd": Paper("dataset", "Minimizing the Accumulated Trajectory Error to Improve Dataset Distillation"),
    "hello": Paper("dataset", "Heavy Labels Out! Dataset Distillation with Label Space Lightening"),
    "mirage": Paper("dataset", "Mirage: Model-Agnostic Graph Distillation for Graph Classification"),
    "calico": Paper(
        "lidar", "CALICO: Self-Supervised Camera-LiDAR Contrastive Pre-training for BEV Perception"
    ),
    "lasermix_pp": Paper("lidar", "Multi-Modal Data-Efficient 3D Scene Understanding for Autonomous Driving"),
    "lima": Paper(
        "lidar",
        "Beyond One Shot, Beyond One Perspective: Cross-View and Long-Horizon Distillation for Better LiDAR Representations",
    ),
    "slidr": Paper("lidar", "Image-to-Lidar Self-Supervised Distillation for Autonomous Driving Data"),
    "lise": Paper(
        "detection3d", "Approaching Outside: Scaling Unsupervised 3D Object Detection from 2D Scene"
    ),
    "monotakd": Paper(
        "detection3d", "MonoTAKD: Teaching Assistant Knowledge Distillation for Monocular 3D Object Detection"
    ),
    "pointdistiller": Paper(
        "detection3d",
        "PointDistiller: Structured Knowledge Distillation Towards Efficient and Compact 3D Detection",
    ),
    "unidistill": Paper(
        "detection3d",
        "UniDistill: A Universal Cross-Modality Knowledge Distillation Framework for 3D Object Detection in Bird's-Eye View",
    ),
    "vcd": Paper("detection3d", "Leveraging Vision-Centric Multi-Modal Expertise for 3D Object Detection"),
    "xray_distill": Paper("detection3d", "Weak-to-Strong 3D Object Detection with X-Ray Distillation"),
    "distillation_dpo": Paper(
        "lidar_generation",
        "Diffusion Distillation With Direct Preference Optimization For Efficient 3D LiDAR Scene Completion",
    ),
    "dynamiccity": Paper("lidar_generation", "DynamicCity: Large-Scale LiDAR Generation from Dynamic Scenes"),
    "dgr_ct": Paper("radiance", "Learning to Distill Global Representation for Sparse-View CT"),
    "feature_3dgs": Paper(
        "radiance", "Feature 3DGS: Supercharging 3D Gaussian Splatting to Enable Distilled Feature Fields"
    ),
    "progressive_radiance": Paper(
        "radiance", "Progressive Radiance Distillation for Inverse Rendering with Gaussian Splatting"
    ),
    "pvd": Paper(
        "radiance",
        "One is All: Bridging the Gap Between Neural Radiance Fields Architectures with Progressive Volume Distillation",
    ),
    "sparse3d": Paper(
        "radiance",
        "Sparse3D: Distilling Multiview-Consistent Diffusion for Object Reconstruction from Sparse Views",
    ),
}

"""The published ECLM/Nebula numbers (ECLM, arXiv 2311.11083; docs/architecture.md) our measurements are set beside.

Their setting is CIFAR-10 (and CIFAR-100) with a pretrained ResNet-18 / VGG16, 500 devices with 25
per round; ours is sklearn digits upsampled to 32x32 with a narrow ResNet-18 trained from scratch on
the cloud's proxy share. Absolute accuracies are therefore not comparable; differences between
methods (who wins, by roughly how much) and traffic/memory ratios are.
"""

from __future__ import annotations

PAPER_SETTING = ("CIFAR-10, 2 of 10 classes per device, ResNet-18; accuracy after one adaptation step "
                 "(ICPP text, Table 1)")

# Accuracy (%) after one adaptation step, CIFAR-10 with 2 classes per device, ResNet-18.
PAPER_ACCURACY = {"na": 73.55, "la": 84.19, "adaptivenet": 87.63, "fedavg": 73.68, "heterofl": 70.19, "eclm": 90.86}
# CIFAR-100, 20 classes per device, VGG16: only the two ends are quoted.
PAPER_CIFAR100 = {"na": 56.79, "eclm": 75.68}
# Communication: eclm needs this many times less traffic than the baseline (average; best case 7.12x).
PAPER_TRAFFIC_REDUCTION = {"fedavg": 4.60, "heterofl": 2.76}
PAPER_TRAFFIC_BEST = 7.12
# Versus training the full model on the device: "up to" factors.
PAPER_MEMORY_REDUCTION_VS_FULL = 9.28
PAPER_LATENCY_REDUCTION_VS_FULL = 11.64

"""The tiny XRayToCT setup shared by the x2ct tests (a plain module: pytest puts Testing/ on sys.path).

A 16³ cube of 16 mm voxels and 3-step trainings of 8-channel networks: enough to exercise every
code path in seconds; the numbers check plumbing, not the method.
"""

from __future__ import annotations

from xraycardiac.xray2ct.data import X2CTDataConfig

G = 16
CONFIG = X2CTDataConfig(grid=G, spacing_mm=16.0)
FAST = ["batch_size=2", "device=cpu", "log_every=1", "warmup_steps=1", "steps=3"]
AE = [f"grid={G}", "channels=[8,8,8]", "norm_num_groups=4"]
ENC = ["cnn_channels=[8,8]", "unet_channels=[8,8]", "feature_channels=4"]
LDM = ["channels=[8,16]", "attention_levels=[false,false]", "num_train_timesteps=10", "inference_steps=5"]

"""The storage floor: Optuna's RDB storage and the private APIs autotune relies on, the study's
fingerprint and versions, the image artifacts and the reference table. Below ``study/`` and
``model/``; it imports only ``config/``, ``space/``, ``decision/`` and ``process``."""

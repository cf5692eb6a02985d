"""Training AFB-URR (the authors' two-stage recipe) with the network's own batched methods.

    python -m vos_train --stage 1 ...      pseudo-videos from COCO images and DAVIS frames
    python -m vos_train --stage 2 ...      real DAVIS clips
    python -m vos_train evaluate ...       DAVIS J/F of a checkpoint

Modules: ``data`` (samples and augmentation), ``loss`` (cross-entropy, bootstrapped CE, uncertainty loss),
``clip`` (the forward pass over a batch of clips), ``pretrained`` (ImageNet weights into the trunks),
``trainer`` (the loop: optimizer, schedule, checkpoints, resume), ``evaluate`` (held-out J, DAVIS scores).
Depends on vos_core only; no Ray.
"""

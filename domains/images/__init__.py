"""Images domain: Stable Diffusion 1.5 (`domains.images.sd15`) and a small CPU pixel model on the
scikit-learn digits (`domains.images.digits`). See docs/images.md."""

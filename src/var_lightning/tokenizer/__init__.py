"""The multi-scale residual VQ-VAE (paper Alg. 1 and 2), plain torch: ``quantizer`` (shared codebook, K scales,
phi convolutions), ``autoencoder`` (encoder / decoder, :class:`MultiScaleVQVAE`), ``config``, and what its
training needs (``losses``, ``discriminator``, ``perceptual``, ``usage``)."""

"""Model architectures: the decoder-only GPT (`extrapos.model`) and the encoder-decoder."""

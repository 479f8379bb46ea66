"""extrapos: positional encodings that extrapolate."""

"""Training loops (the LM loop is `extrapos.train`; translation here)."""

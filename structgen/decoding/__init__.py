"""Decoding: the logits processor and the generation loop."""

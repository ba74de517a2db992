"""alignkit's decoding-time half: logits-processor plugins that steer ``model.generate`` (and
vLLM) with auxiliary models. Methods land here as their issues are resolved (see README)."""

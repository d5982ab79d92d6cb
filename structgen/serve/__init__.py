"""``structgen serve``: an OpenAI-compatible chat-completions server whose structured answers
always parse and validate (``pip install 'structgen[serve]'``; docs/serve.md)."""

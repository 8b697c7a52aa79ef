"""The Gemini advisor: config, fact sheets, prompts, transport, and the streamed `Advice`."""

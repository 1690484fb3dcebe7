"""`reverie serve`: an OpenAI-compatible image endpoint and a web studio over one warm engine."""

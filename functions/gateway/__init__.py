"""The gateway function: HTTP in (OpenAI /v1 and native /api/v1); its handlers are in http_api/."""

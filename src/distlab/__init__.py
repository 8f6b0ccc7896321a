"""distlab: one model, one dataset, every distributed and federated paradigm, measured alike."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # The API pulls in torch; import it lazily so `import distlab` stays cheap.
    if name in {"run", "load_run", "RunResult", "RunConfig"}:
        from distlab import api

        return getattr(api, name)
    raise AttributeError(name)

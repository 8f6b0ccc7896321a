"""The live dashboard: `distlab dashboard RUNS_DIR` serves a page that follows runs as they run.

runs.py reads run directories into JSON-ready dicts (no web framework); app.py is the Starlette
app, its token check and the uvicorn server; static/ holds the page.
"""

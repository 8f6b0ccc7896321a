"""The live dashboard: `distlab dashboard RUNS_DIR` serves a page that follows runs as they run.

runs.py reads run directories (through distlab.runs) into JSON-ready dicts, views.py derives
what the page shows from a run's events (neither knows a web framework); app.py is the
Starlette app, its token check and the uvicorn server; static/ holds the page.
"""

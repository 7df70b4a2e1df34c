"""`charrnn serve`: many users generating from the same models at once.

`engine.py` batches the requests of one model (torch and sample.py only, no HTTP); `app.py`
is the HTTP API on top of it; `models.py` loads the checkpoints; `server.py` runs the app
under uvicorn; `static/` holds the playground's page. Importing this package imports none of
them, so the engine can be used without the web framework installed.
"""

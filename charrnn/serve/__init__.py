"""`charrnn serve`: many users generating from the same models at once.

`engine.py` batches the requests of one model (torch and sample.py only, no HTTP) and
`streams.py` is a request's reading end; `app.py` is the HTTP API on top of them, writing its
answers and server-sent events with `answers.py`; `models.py` loads the checkpoints;
`server.py` runs the app under uvicorn (`protocol.py` bounds each connection, `siteguard.py`
answers only this site's pages); `static/` holds the playground's page. Importing this
package imports none of them, so the engine can be used without the web framework installed.
"""

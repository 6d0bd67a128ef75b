"""The live page: draw a digit, watch every layer of a trained CNN respond.

`cnnlab.serve.app.create_app(run_dir)` builds the FastAPI app (`cnnlab serve` runs it with
uvicorn); `model_service` holds the per-request computation, `explain_position` the tutorial's
sum at one position, `model_info` the model panel, `encoding` the JSON shapes, `body_limit` the
upload limit, `bench` the latency measurements, and `static/` the page itself (plain HTML, CSS and
JavaScript, nothing fetched from elsewhere). Needs the `serve` extra: pip install 'cnnlab[serve]'.
"""

"""A local web viewer: ``python -m cxrnet.serve checkpoint=<model> [predictions=<predict output_dir>]``.

Upload PNG, JPEG or DICOM radiographs (drag and drop, or the file picker, several at once) and see each one
with its lung contour, infection and explanation heatmaps as layers to toggle and fade, the class
probabilities, the severity (per lung and per zone, the Brixia-like zone scores drawn on the six zones, the
totals, the grade, and the learned severity head where it was trained) and the model card; or browse the
table of a finished ``cxrnet.predict`` run and open any row in the same view. The server binds 127.0.0.1 by
default; uploads live in a private temporary folder and are deleted when the page closes or goes quiet.

Parts: :mod:`~cxrnet.serve.run` (the Hydra entry point), :mod:`~cxrnet.serve.app` (:func:`create_app`, the
HTTP API), :mod:`~cxrnet.serve.uploads` (streamed, bounded uploads), :mod:`~cxrnet.serve.sessions`
(private folders and their end), :mod:`~cxrnet.serve.worker` and :mod:`~cxrnet.serve.jobs` (the single
model thread and what it reports), :mod:`~cxrnet.serve.layers` (the PNG layers), :mod:`~cxrnet.serve.views`
(result documents, the model card), :mod:`~cxrnet.serve.browse` (a predict output folder), ``static/`` (the
page: plain HTML, CSS and JavaScript, nothing fetched from elsewhere).

Needs the optional extra ``serve`` (``pip install "cxrnet[serve]"``: fastapi, uvicorn, python-multipart).
Research software, not a medical device.
"""

from cxrnet.serve.run import main, serve

__all__ = ["main", "serve"]

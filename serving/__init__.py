"""Index, blue/green storage and the HTTP service (numpy, annoy, boto3, prometheus_client, gunicorn, uvicorn;
never TF/Spark/MLflow/Prefect).

Public API for the other stages:

- ``serving.publish.publish_model(model_dir, settings, store=None) -> dict``: build the Annoy index,
  measure ANN recall@100 vs exact, refuse below ``settings.min_ann_recall`` (``IndexRejected`` with
  ``.result``), push blue/green and flip ACTIVE. Result keys: pushed, slot, model_version, ann_recall,
  manifest_sha256, previous_slot, previous_model_version, n_trees, search_k, bias_scale, items, dim, ...
- ``serving.publish.build_slot_files(model_dir, work_dir, n_trees, search_k, min_recall)``: index only.
- ``serving.storage``: ``BlueGreenStore.from_settings(settings)``, ``status(store)``, ``rollback(store)``.
- ``serving.app.run_server(settings, port, cache_dir, model_dir=None, workers=1, http="uvicorn")``: gunicorn
  workers (``serving.server``) over ``serving.app.Service``; ``Recommender.recommend(items, k, exclude, candidates)``.
"""

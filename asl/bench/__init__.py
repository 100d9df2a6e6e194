"""python -m asl.bench: the project's main job (see __main__)."""

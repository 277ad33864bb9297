"""Safe file handling below every other package: output checks before work
(`safeio.outputs`), atomic writes of files and folders (`safeio.atomic`), UTF-8 text and JSON
reading with errors that name file and line (`safeio.text`) and an input file's version
(`safeio.identity`). It knows nothing of KILT or models."""

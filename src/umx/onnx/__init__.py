"""ONNX: `umx export` and the onnxruntime backend.

`options` holds the backend's and the command's options (no torch at import); `export` builds
and writes the graphs; `graphs` keeps graph files beside their SHA-256; `runtime` runs graphs in
onnxruntime in place of the target models; `folder` loads an export folder as a separator.
"""

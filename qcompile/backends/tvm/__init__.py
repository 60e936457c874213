"""Apache TVM backends: the integer graph lowered to Relax + scheduled TIR kernels."""
import inspect as _inspect

# Every TVMScript prim_func calls inspect.stack(), which looks up the module of each frame's file. Frames of
# the import machinery ("<frozen importlib._bootstrap>") name no module file, so each lookup scanned all of
# sys.modules; TVM's tensor intrinsics build hundreds of prim_funcs while being imported, and the first
# import of the CUDA backend took 70 s beside torch and transformers (5 s with these entries).
for _name in ("importlib._bootstrap", "importlib._bootstrap_external"):
    _inspect.modulesbyfile.setdefault(f"<frozen {_name}>", _name)

"""Apache TVM backends: the integer graph lowered to Relax + scheduled TIR kernels."""
import inspect as _inspect

# Every TVMScript prim_func calls inspect.stack(), which looks up the module of each frame's file. Frames of
# the import machinery ("<frozen importlib._bootstrap>") name no module file, so each lookup scanned all of
# sys.modules; TVM's tensor intrinsics build hundreds of prim_funcs while being imported, and the first
# import of the CUDA backend took 70 s beside torch and transformers (5 s with these entries).
for _name in ("importlib._bootstrap", "importlib._bootstrap_external"):
    _inspect.modulesbyfile.setdefault(f"<frozen {_name}>", _name)


def _patch_macro_parser_lookup() -> None:
    """Each TVMScript macro call finds the parser in the globals of the nearest frame that has one, through
    inspect.getouterframes: that builds a FrameInfo for every frame of the stack (its source line, its
    module looked up by file name), and frames of eval'd code ("<string>") name no file, so each lookup
    scanned sys.modules. Our GEMM kernels call macros some 200 times per model: MiniLM's x86 build took
    39.4 s with that search, 31.5 s with this one (the same search, frame by frame, without FrameInfos)."""
    from tvm.script.parser.core.parser import ScriptMacro

    def find_parser_def(self):
        frame = _inspect.currentframe()
        while frame is not None:
            parser = frame.f_globals.get(ScriptMacro.parser_object_name)
            if parser is not None:
                return parser
            frame = frame.f_back
        raise RuntimeError(f"{ScriptMacro.parser_object_name} not available")

    ScriptMacro._find_parser_def = find_parser_def


_patch_macro_parser_lookup()

"""Non-executing reading of a PyTorch zip checkpoint's data.pkl, shared by the fixture scripts.

Only the globals a plain state_dict needs are resolved (tensor and Parameter rebuilds, OrderedDict,
torch dtype/storage names); anything else raises, so nothing in the file is ever executed. Every
tensor comes back as its storage key (the record name under data/).
"""
import io
import pickle
from collections import OrderedDict


def load_storage_refs(pkl_bytes):
    """The object pickled in data.pkl, with every tensor replaced by its storage key."""

    def rebuild(storage, *rest):
        return storage

    class Scan(pickle.Unpickler):
        def find_class(self, m, n):
            if (m, n) == ("torch._utils", "_rebuild_tensor_v2"):
                return rebuild
            if (m, n) == ("collections", "OrderedDict"):
                return OrderedDict
            if (m, n) == ("torch._utils", "_rebuild_parameter"):
                return lambda d, *r: d
            if m == "torch":
                return n
            raise pickle.UnpicklingError(f"{m}.{n}")

        def persistent_load(self, pid):
            return pid[2]

    return Scan(io.BytesIO(pkl_bytes)).load()

"""Entry point for Hugging Face Spaces (``sdk: gradio``, ``app_file: app.py``) and for
``python app.py``: builds the review app and launches it.

Environment:
  PROTOATLAS_HOME      data directory (default: /data/protoatlas on a Space with persistent
                       storage, else ./protoatlas-data)
  PROTOATLAS_WORKSPACE workspace name (default "default")
  PROTOATLAS_DEMO      1: on first start, generate the synthetic demo batch and discover its
                       types (default: 1 on a Space, 0 elsewhere)
  PROTOATLAS_AUTH      user:password[:role][,user2:password2[:role]] turns the login on;
                       roles viewer | reviewer | admin (default admin; webapp/access.py)
  PROTOATLAS_HF_ROLES  hfuser:role[,...]: roles of Hugging Face OAuth users (hf_oauth: true);
                       others get PROTOATLAS_HF_DEFAULT_ROLE (default viewer)
  PROTOATLAS_DEVICE    auto | cpu | cuda (default auto: the GPU when there is one)
  GRADIO_SERVER_NAME / GRADIO_SERVER_PORT   interface and port (Spaces: 0.0.0.0:7860)
"""

from __future__ import annotations

import os
import sys


def main() -> int:
    from webapp.app import serve

    on_space = bool(os.environ.get("SPACE_ID"))
    demo = os.environ.get("PROTOATLAS_DEMO", "1" if on_space else "0").lower() in (
        "1",
        "true",
        "yes",
        "on",
    )
    host = os.environ.get("GRADIO_SERVER_NAME", "0.0.0.0" if on_space else "127.0.0.1")
    port = int(os.environ.get("GRADIO_SERVER_PORT", os.environ.get("PORT", "7860")))
    return serve(
        home=os.environ.get("PROTOATLAS_HOME") or None,
        workspace=os.environ.get("PROTOATLAS_WORKSPACE", "default"),
        host=host,
        port=port,
        demo=demo,
        device=os.environ.get("PROTOATLAS_DEVICE", "auto"),
    )


if __name__ == "__main__":
    sys.exit(main())

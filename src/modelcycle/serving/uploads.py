"""Request bodies that are files: a raw image body or a multipart/form-data upload."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from starlette.datastructures import Headers, UploadFile

from modelcycle.serving.adapter import RequestError, ServingAdapter

MULTIPART = "multipart/form-data"
#: Types a file body may also carry to a model that takes files, whose decoder reads the
#: file's own signature: names older software gives JPEG and PNG, a file of no known type
#: (a browser's upload of a file whose type it cannot tell), and curl's type for
#: `--data-binary @file` without `-H Content-Type` (a form's fields are no file, and are
#: refused as such by the signature).
FILE_ALIASES = (
    "image/jpg",
    "image/pjpeg",
    "image/x-png",
    "application/octet-stream",
    "application/x-www-form-urlencoded",
)


def takes_bytes(adapter: ServingAdapter, content_type: str) -> bool:
    """Whether a body of `content_type` goes to `adapter.decode_bytes`."""
    return content_type in adapter.byte_types or bool(
        adapter.byte_types and (content_type == MULTIPART or content_type in FILE_ALIASES)
    )


def accepted_types(adapter: ServingAdapter) -> str:
    """The media types a model takes, for a 415 message."""
    if not adapter.byte_types:
        return "application/json"
    types = ("application/json", *adapter.byte_types, "application/octet-stream")
    return ", ".join(types) + f" or {MULTIPART}"


async def file_bytes(content_type: str, headers: Headers, body: bytes) -> bytes:
    """The file in `body`: the body itself, or the one file part of a multipart upload.

    Raises:
        RequestError: A malformed multipart body, or one without exactly one file part.
    """
    if content_type != MULTIPART:
        return body
    from starlette.formparsers import MultiPartException, MultiPartParser

    async def stream() -> AsyncGenerator[bytes, None]:
        yield body

    try:
        form = await MultiPartParser(headers, stream(), max_files=1, max_fields=8).parse()
    except MultiPartException as err:
        raise RequestError(f"Malformed multipart body: {err.message}") from err
    uploads = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
    if len(uploads) != 1:
        raise RequestError(
            f"The multipart body has {len(uploads)} file parts; send exactly one "
            "(e.g. curl -F file=@image.png)."
        )
    return await uploads[0].read()

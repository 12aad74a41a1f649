"""Download through the real server: files that real readers open, names sanitised."""

from __future__ import annotations

import io
import json

import docx
import grpc
import pytest
from pypdf import PdfReader

from llmproxy.v1 import llmproxy_pb2 as pb
from tests.support.running import running_client, settings_for

TEXT = "Café naïve — Ελληνικά — Кириллица\nSecond line."


@pytest.fixture
async def client():
    async with running_client(settings_for()) as (_, client):
        yield client


async def test_pdf_opens_and_keeps_unicode(client):
    response = await client.download(TEXT, pb.DOCUMENT_FORMAT_PDF, "../../etc/report")
    assert response.content_type == "application/pdf"
    assert "/" not in response.filename and response.filename.endswith(".pdf")
    text = "".join(page.extract_text() for page in PdfReader(io.BytesIO(response.data)).pages)
    assert "Ελληνικά" in text and "Кириллица" in text and "Café" in text


async def test_docx_opens_and_keeps_unicode(client):
    response = await client.download(TEXT, pb.DOCUMENT_FORMAT_DOCX, "answer")
    assert response.filename == "answer.docx"
    document = docx.Document(io.BytesIO(response.data))
    assert [p.text for p in document.paragraphs if p.text] == TEXT.split("\n")


@pytest.mark.parametrize(
    ("fmt", "name", "decode"),
    [
        (pb.DOCUMENT_FORMAT_TXT, "response.txt", lambda b: b.decode()),
        (pb.DOCUMENT_FORMAT_MARKDOWN, "response.md", lambda b: b.decode()),
        (pb.DOCUMENT_FORMAT_JSON, "response.json", lambda b: json.loads(b)["content"]),
    ],
)
async def test_text_formats(client, fmt, name, decode):
    response = await client.download(TEXT, fmt)
    assert response.filename == name
    assert decode(response.data) == TEXT


async def test_unspecified_format_is_invalid_argument(client):
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await client.download("x", pb.DOCUMENT_FORMAT_UNSPECIFIED)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "format" in caught.value.details()

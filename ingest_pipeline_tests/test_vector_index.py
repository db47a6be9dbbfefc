"""A CyborgDB service URL is parsed before index keys and vectors are sent to it."""

import pytest

from ingest_pipeline.vector_index import check_service_url


@pytest.mark.parametrize("url", ["http://remote-host:8000", "HTTP://remote-host", "Http://10.0.0.5:8000/",
                                 " http://cyborgdb.internal "])
def test_plain_http_to_a_remote_host_is_refused_whatever_its_case(url):
    with pytest.raises(ValueError, match="refusing plain http"):
        check_service_url(url)


@pytest.mark.parametrize("url", ["ftp://cyborgdb.internal", "cyborgdb.internal:8000", "https://", ""])
def test_a_url_without_an_http_scheme_and_host_is_refused(url):
    with pytest.raises(ValueError, match="must be an http"):
        check_service_url(url)


@pytest.mark.parametrize("url", ["https://cyborgdb.internal", "HTTPS://CyborgDB.internal:443",
                                 "http://127.0.0.1:8000", "HTTP://LOCALHOST:8000", "http://[::1]:8000"])
def test_tls_or_loopback_is_accepted(url):
    check_service_url(url)

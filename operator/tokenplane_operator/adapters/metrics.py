"""Read Prometheus `/metrics` pages from the serving pods over plain HTTP (inside the cluster network)."""

from __future__ import annotations

import aiohttp

from tokenplane_operator.errors import TokenplaneError

__all__ = ["MetricsScraper", "ScrapeFailedError"]


class ScrapeFailedError(TokenplaneError):
    """A metrics page could not be read; the next collection tries again."""


class MetricsScraper:
    """One shared aiohttp session for every scrape.

    Args:
        timeout_s: Give up on a pod after this long; a slow pod must not hold back the others.
    """

    def __init__(self, timeout_s: float = 5.0) -> None:
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def scrape(self, url: str) -> str:
        """Return the exposition text at `url`.

        Raises:
            ScrapeFailedError: The pod did not answer with 200 in time.
        """
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        try:
            async with self._session.get(url) as response:
                if response.status != 200:
                    raise ScrapeFailedError(f"{url} answered {response.status}")
                return await response.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ScrapeFailedError(f"{url} unreachable: {exc}") from exc

    async def close(self) -> None:
        """Close the session."""
        if self._session is not None:
            await self._session.close()
            self._session = None

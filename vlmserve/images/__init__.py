"""The image path: fetching image URLs safely and decoding images within limits."""

/* assets.h - files compiled into the binary (src/embed.py at build time). */
#ifndef GENRED_ASSETS_H
#define GENRED_ASSETS_H

#include <stddef.h>

extern const unsigned char asset_openapi_yaml[];
extern const size_t asset_openapi_yaml_len;

/* The web page served at GET / (web/). */
extern const unsigned char asset_web_index_html[];
extern const size_t asset_web_index_html_len;
extern const unsigned char asset_web_app_js[];
extern const size_t asset_web_app_js_len;
extern const unsigned char asset_web_style_css[];
extern const size_t asset_web_style_css_len;

#endif

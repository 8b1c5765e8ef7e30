#include <curl/curl.h>
// curl_easy_setopt and curl_easy_getinfo are variadic; Swift cannot call
// C variadic functions, so each argument type gets a typed wrapper.
static inline CURLcode ccurl_setopt_long(CURL *c, CURLoption o, long v) { return curl_easy_setopt(c, o, v); }
static inline CURLcode ccurl_setopt_off(CURL *c, CURLoption o, curl_off_t v) { return curl_easy_setopt(c, o, v); }
static inline CURLcode ccurl_setopt_ptr(CURL *c, CURLoption o, const void *v) { return curl_easy_setopt(c, o, v); }
typedef size_t (*ccurl_data_cb)(char *, size_t, size_t, void *);
static inline CURLcode ccurl_setopt_data_cb(CURL *c, CURLoption o, ccurl_data_cb f) { return curl_easy_setopt(c, o, f); }
static inline long ccurl_response_code(CURL *c) { long v = 0; curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &v); return v; }

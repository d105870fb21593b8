/* tfq_loader [--max-bytes N] IN OUT: writes the dense model of the compressed TFLite file IN to OUT.
 *
 * Exit 0 on success; exit 1 with the loader's message on stderr on a bad file; exit 2 on a usage or I/O
 * error. Used for the sanitizer build (`make sanitize`) and for fuzzing the loader.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tfq_loader.h"

static int read_file(const char* path, uint8_t** data, size_t* len) {
  FILE* file = fopen(path, "rb");
  if (file == NULL) return -1;
  size_t cap = 1 << 16, n = 0;
  uint8_t* buffer = (uint8_t*)malloc(cap);
  while (buffer != NULL) {
    n += fread(buffer + n, 1, cap - n, file);
    if (n < cap) break;
    uint8_t* grown = cap <= SIZE_MAX / 2 ? (uint8_t*)realloc(buffer, cap * 2) : NULL;
    if (grown == NULL) {
      free(buffer);
      buffer = NULL;
      break;
    }
    buffer = grown;
    cap *= 2;
  }
  int failed = buffer == NULL || ferror(file);
  fclose(file);
  /* An allocation of exactly the file's length, so that AddressSanitizer sees any read past its end. */
  uint8_t* exact = failed ? NULL : (uint8_t*)malloc(n > 0 ? n : 1);
  if (exact != NULL) memcpy(exact, buffer, n);
  free(buffer);
  if (exact == NULL) return -1;
  *data = exact;
  *len = n;
  return 0;
}

int main(int argc, char** argv) {
  size_t max_bytes = 0;
  int arg = 1;
  if (argc == 5 && strcmp(argv[1], "--max-bytes") == 0) {
    char* end = NULL;
    unsigned long long value = strtoull(argv[2], &end, 10);
    if (end == argv[2] || *end != '\0' || value == 0 || value > SIZE_MAX) {
      fprintf(stderr, "tfq_loader: --max-bytes must be a positive integer; got %s\n", argv[2]);
      return 2;
    }
    max_bytes = (size_t)value;
    arg = 3;
  } else if (argc != 3) {
    fprintf(stderr, "usage: tfq_loader [--max-bytes N] IN OUT\n");
    return 2;
  }
  uint8_t* data = NULL;
  size_t len = 0;
  if (read_file(argv[arg], &data, &len) != 0) {
    fprintf(stderr, "tfq_loader: cannot read %s\n", argv[arg]);
    return 2;
  }
  uint8_t* out = NULL;
  size_t out_len = 0;
  char err[TFQ_LOADER_ERR_LEN];
  int status = tfq_decompress(data, len, max_bytes, &out, &out_len, err, sizeof(err));
  free(data);
  if (status != 0) {
    fprintf(stderr, "tfq_loader: %s\n", err);
    return 1;
  }
  FILE* file = fopen(argv[arg + 1], "wb");
  int failed = file == NULL || fwrite(out, 1, out_len, file) != out_len;
  if (file != NULL && fclose(file) != 0) failed = 1;
  tfq_free(out);
  if (failed) {
    fprintf(stderr, "tfq_loader: cannot write %s\n", argv[arg + 1]);
    return 2;
  }
  return 0;
}

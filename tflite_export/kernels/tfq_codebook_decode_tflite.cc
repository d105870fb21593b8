// TfqCodebookDecode for the TFLite C++ interpreter (TensorFlow's `InterpreterWithCustomOps` in Python).
//
// TensorFlow 2.21's wheel ships no TFLite headers, so the few structs this kernel touches are declared
// here by hand. They must match the ABI of TFLite in libtensorflow_cc.so.2 (TF 2.21, LP64): the layouts
// follow tensorflow/lite/core/c/common.h, whose fields are only ever appended ("semi-ABI stable"), and the
// static_asserts below pin the offsets this file relies on. Only prefixes are declared for TfLiteContext and
// TfLiteNode (the runtime owns them; we only read leading fields); TfLiteTensor is declared in full because
// the context's tensor array is indexed by its size.
//
// Entry point: TfqCodebookDecodeRegister(resolver), a registerer in the sense of
// InterpreterWithCustomOps(custom_op_registerers=["TfqCodebookDecodeRegister"]): TensorFlow looks the name
// up with dlsym, so the library must be loaded with RTLD_GLOBAL first.
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "tfq_codebook_core.h"

extern "C" {

typedef enum TfLiteStatus { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;

// Values of TFLite's TfLiteType enum that this kernel checks.
enum { kTfLiteUInt8 = 3, kTfLiteInt8 = 9 };
enum { kTfLiteBuiltinCustom = 32 };

typedef struct TfLiteIntArray {
  int size;
  int data[];  // flexible array member, as in TFLite (a GNU extension in C++)
} TfLiteIntArray;

typedef struct TfLiteQuantizationParams {
  float scale;
  int32_t zero_point;
} TfLiteQuantizationParams;

typedef struct TfLiteQuantization {
  int type;  // TfLiteQuantizationType
  void* params;
} TfLiteQuantization;

typedef struct TfLiteTensor {
  int type;    // TfLiteType
  void* data;  // TfLitePtrUnion: a union of pointers
  TfLiteIntArray* dims;
  TfLiteQuantizationParams params;
  int allocation_type;  // TfLiteAllocationType
  size_t bytes;
  const void* allocation;
  const char* name;
  void* delegate;
  int buffer_handle;
  bool data_is_stale;
  bool is_variable;
  TfLiteQuantization quantization;
  void* sparsity;
  const TfLiteIntArray* dims_signature;
} TfLiteTensor;

typedef struct TfLiteNode {  // prefix
  TfLiteIntArray* inputs;
  TfLiteIntArray* outputs;
  TfLiteIntArray* intermediates;
  TfLiteIntArray* temporaries;
  void* user_data;
  void* builtin_data;
  const void* custom_initial_data;
  int custom_initial_data_size;
} TfLiteNode;

typedef struct TfLiteContext {  // prefix
  size_t tensors_size;
  void* GetExecutionPlan;
  TfLiteTensor* tensors;
  void* impl_;
  void* ResizeTensor;
  void (*ReportError)(struct TfLiteContext*, const char* msg, ...);
} TfLiteContext;

typedef struct TfLiteRegistration {
  void* (*init)(TfLiteContext* context, const char* buffer, size_t length);
  void (*free)(TfLiteContext* context, void* buffer);
  TfLiteStatus (*prepare)(TfLiteContext* context, TfLiteNode* node);
  TfLiteStatus (*invoke)(TfLiteContext* context, TfLiteNode* node);
  const char* (*profiling_string)(const TfLiteContext* context, const TfLiteNode* node);
  int32_t builtin_code;
  const char* custom_name;
  int version;
  void* registration_external;
  void* (*async_kernel)(TfLiteContext* context, TfLiteNode* node);
  uint64_t inplace_operator;
} TfLiteRegistration;

}  // extern "C"

#if defined(__x86_64__) || defined(__aarch64__)
static_assert(sizeof(TfLiteTensor) == 112, "TfLiteTensor layout differs from TFLite's (LP64)");
static_assert(offsetof(TfLiteTensor, bytes) == 40, "TfLiteTensor.bytes offset");
static_assert(offsetof(TfLiteNode, user_data) == 32, "TfLiteNode.user_data offset");
static_assert(offsetof(TfLiteContext, tensors) == 16, "TfLiteContext.tensors offset");
static_assert(offsetof(TfLiteContext, ReportError) == 40, "TfLiteContext.ReportError offset");
static_assert(sizeof(TfLiteRegistration) == 88, "TfLiteRegistration layout differs from TFLite's");
#endif

namespace tflite {
// Declared, not defined: the call below links to MutableOpResolver::AddCustom(const char*,
// const TfLiteRegistration*, int) exported by libtensorflow_cc.so.2. No member is ever accessed.
class MutableOpResolver {
 public:
  void AddCustom(const char* name, const TfLiteRegistration* registration, int version);
};
}  // namespace tflite

namespace {

struct OpData {
  TfqCodebookAttrs attrs;
  int status;  // 0 when the custom options parsed and passed the attribute checks
  char error[TFQ_CODEBOOK_ERR_LEN];
};

void* Init(TfLiteContext*, const char* buffer, size_t length) {
  OpData* data = static_cast<OpData*>(calloc(1, sizeof(OpData)));
  if (data == nullptr) return nullptr;
  // Init cannot report an error; Prepare reports it.
  data->status = tfq_codebook_parse_options(reinterpret_cast<const uint8_t*>(buffer), length, &data->attrs,
                                            data->error, sizeof(data->error));
  return data;
}

void Free(TfLiteContext*, void* buffer) { free(buffer); }

// Tensor `slot` of an index list, or nullptr if the list or the index is out of range.
TfLiteTensor* GetTensor(TfLiteContext* context, const TfLiteIntArray* list, int slot) {
  if (list == nullptr || slot >= list->size) return nullptr;
  int index = list->data[slot];
  if (index < 0 || static_cast<size_t>(index) >= context->tensors_size) return nullptr;
  return &context->tensors[index];
}

int64_t NumElements(const TfLiteTensor* tensor) {
  if (tensor->dims == nullptr) return -1;
  int64_t count = 1;
  for (int i = 0; i < tensor->dims->size; ++i) count *= tensor->dims->data[i];
  return count;
}

TfLiteStatus Fail(TfLiteContext* context, const char* message) {
  context->ReportError(context, "%s: %s", TFQ_CODEBOOK_OP_NAME, message);
  return kTfLiteError;
}

TfLiteStatus Check(TfLiteContext* context, TfLiteNode* node, const OpData** out_data,
                   TfLiteTensor** packed, TfLiteTensor** codebook, TfLiteTensor** output) {
  const OpData* data = static_cast<const OpData*>(node->user_data);
  if (data == nullptr) return Fail(context, "out of memory in Init");
  if (data->status != 0) return Fail(context, data->error);
  if (node->inputs == nullptr || node->inputs->size != 2 || node->outputs == nullptr ||
      node->outputs->size != 1) {
    return Fail(context, "expected 2 inputs (packed indices, codebook) and 1 output");
  }
  *packed = GetTensor(context, node->inputs, 0);
  *codebook = GetTensor(context, node->inputs, 1);
  *output = GetTensor(context, node->outputs, 0);
  if (*packed == nullptr || *codebook == nullptr || *output == nullptr) {
    return Fail(context, "an input or output tensor index is invalid");
  }
  if ((*packed)->type != kTfLiteUInt8 || (*codebook)->type != kTfLiteInt8 || (*output)->type != kTfLiteInt8) {
    return Fail(context, "expected uint8 packed indices, an int8 codebook and an int8 output");
  }
  int64_t elements = NumElements(*output);
  if (elements < 0 || static_cast<uint64_t>(elements) != (*output)->bytes) {
    return Fail(context, "the output tensor's shape does not match its byte size");
  }
  char error[TFQ_CODEBOOK_ERR_LEN];
  if (tfq_codebook_check_sizes(&data->attrs, (*packed)->bytes, (*codebook)->bytes, (*output)->bytes, error,
                               sizeof(error)) != 0) {
    return Fail(context, error);
  }
  *out_data = data;
  return kTfLiteOk;
}

TfLiteStatus Prepare(TfLiteContext* context, TfLiteNode* node) {
  const OpData* data;
  TfLiteTensor *packed, *codebook, *output;
  return Check(context, node, &data, &packed, &codebook, &output);
}

TfLiteStatus Eval(TfLiteContext* context, TfLiteNode* node) {
  const OpData* data;
  TfLiteTensor *packed, *codebook, *output;
  if (Check(context, node, &data, &packed, &codebook, &output) != kTfLiteOk) return kTfLiteError;
  char error[TFQ_CODEBOOK_ERR_LEN];
  if (tfq_codebook_decode(&data->attrs, static_cast<const uint8_t*>(packed->data), packed->bytes,
                          static_cast<const int8_t*>(codebook->data), codebook->bytes,
                          static_cast<int8_t*>(output->data), output->bytes, error, sizeof(error)) != 0) {
    return Fail(context, error);
  }
  return kTfLiteOk;
}

// AddCustom copies sizeof(TfLiteRegistration) bytes of the library's own definition; the zeroed tail keeps
// that copy inside this object should a later TFLite append fields.
struct PaddedRegistration {
  TfLiteRegistration registration;
  unsigned char reserved[128];
};

PaddedRegistration g_registration = {
    {Init, Free, Prepare, Eval, nullptr, kTfLiteBuiltinCustom, TFQ_CODEBOOK_OP_NAME, 1, nullptr, nullptr, 0},
    {0}};

}  // namespace

extern "C" TFQ_EXPORT void TfqCodebookDecodeRegister(tflite::MutableOpResolver* resolver) {
  resolver->AddCustom(TFQ_CODEBOOK_OP_NAME, &g_registration.registration, 1);
}

// The registration itself, for C++ hosts that own their resolver: resolver.AddCustom("TfqCodebookDecode",
// TfqCodebookDecodeRegistration()).
extern "C" TFQ_EXPORT const TfLiteRegistration* TfqCodebookDecodeRegistration(void) {
  return &g_registration.registration;
}

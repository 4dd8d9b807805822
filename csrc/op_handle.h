// A typed handle on one of this library's ops, for C++ code that calls an op
// through the dispatcher (autograd.cpp, directions.cpp). Look it up once (keep the
// result in a function-local static): the lookup searches the dispatcher's table.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

namespace rnnfused {

template <typename Signature>
c10::TypedOperatorHandle<Signature> op_handle(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

}  // namespace rnnfused

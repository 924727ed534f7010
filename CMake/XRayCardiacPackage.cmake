# Copy and install the `xraycardiac` Python package with the extension.
#
#   xraycardiac_package(
#     SOURCE <dir>                 # the package folder, <repo>/xraycardiac
#     BUILD_DESTINATION <dir>      # build tree: copied there at configure time
#     INSTALL_DESTINATION <dir>    # install tree: installed there (COMPONENT RuntimeLibraries)
#     )
#
# Kept in its own file so that Testing/test_install_rules.py runs these exact rules without Slicer.
function(xraycardiac_package)
  cmake_parse_arguments(_xc "" "SOURCE;BUILD_DESTINATION;INSTALL_DESTINATION" "" ${ARGN})
  foreach(_arg SOURCE BUILD_DESTINATION INSTALL_DESTINATION)
    if(NOT _xc_${_arg})
      message(FATAL_ERROR "xraycardiac_package: ${_arg} is required")
    endif()
  endforeach()
  if(_xc_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "xraycardiac_package: unknown arguments ${_xc_UNPARSED_ARGUMENTS}")
  endif()
  file(COPY ${_xc_SOURCE}
    DESTINATION ${_xc_BUILD_DESTINATION}
    FILES_MATCHING PATTERN "*.py" PATTERN "*.json" PATTERN "__pycache__" EXCLUDE)
  install(DIRECTORY ${_xc_SOURCE}
    DESTINATION ${_xc_INSTALL_DESTINATION}
    COMPONENT RuntimeLibraries
    FILES_MATCHING PATTERN "*.py" PATTERN "*.json" PATTERN "__pycache__" EXCLUDE)
endfunction()

# Copy and install the `xraycardiac` Python package with the extension.
#
#   xraycardiac_package(
#     SOURCE <dir>                 # the package folder, <repo>/xraycardiac
#     BUILD_DESTINATION <dir>      # build tree: copied there at configure time
#     INSTALL_DESTINATION <dir>    # install tree: installed there (COMPONENT RuntimeLibraries)
#     )
#
# Ships what the wheel ships: every .py file plus the package-data of pyproject.toml
# ([tool.setuptools.package-data]: models/*.json, models/weights/*, models/weights/*/*, data/*.json),
# never caches. Keep the patterns below in step with pyproject.toml: Testing/test_install_rules.py runs
# these exact rules without Slicer and compares the result with a freshly built wheel.
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
  if(NOT IS_DIRECTORY "${_xc_SOURCE}")
    message(FATAL_ERROR "xraycardiac_package: SOURCE ${_xc_SOURCE} is not a folder")
  endif()
  get_filename_component(_pkg "${_xc_SOURCE}" NAME)
  # REGEX sees the full path; "[^/.][^/]*" is one file name that does not start with a dot, as a
  # setuptools glob "*" (hidden files are not package data).
  set(_name "[^/.][^/]*")
  set(_patterns
    PATTERN "*.py"
    REGEX "/${_pkg}/models/${_name}\\.json$"
    REGEX "/${_pkg}/models/weights/${_name}$"
    REGEX "/${_pkg}/models/weights/${_name}/${_name}$"
    REGEX "/${_pkg}/data/${_name}\\.json$"
    PATTERN "__pycache__" EXCLUDE
    PATTERN "*.pyc" EXCLUDE
    )
  file(COPY "${_xc_SOURCE}" DESTINATION "${_xc_BUILD_DESTINATION}" FILES_MATCHING ${_patterns})
  install(DIRECTORY "${_xc_SOURCE}"
    DESTINATION "${_xc_INSTALL_DESTINATION}"
    COMPONENT RuntimeLibraries
    FILES_MATCHING ${_patterns}
    )
endfunction()
